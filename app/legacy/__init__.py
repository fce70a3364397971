"""The Flask-era accounts and login history, brought into this service: ``ladys-essence legacy import``.

source.py reads the Flask database (read only), rules.py turns one row into what is stored here,
collisions.py decides who keeps a phone number or email, importer.py writes in idempotent batches,
report.py says what happened. docs/legacy-import.md is the operator's guide.
"""
