"""Studies of when TEMPO pays, with their scripts and configs (see README.md here).

Not part of the installed package: run from the repository root, `python -m experiments.<name>`.
"""
