"""The experiments themselves: each study is a module with a settings object and
``run(settings, workdir)``; a large report lives beside it in ``<study>_report.py``.

Studies may use ``train``, ``analysis``, ``parallel``, ``models`` and ``ops``; nothing
below this package imports a study. ``experiments/<study>.py`` only parses flags and calls
``run``.
"""
