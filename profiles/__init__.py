"""Measured latency tables shipped with vitres-deploy, one per measured machine:
``<device>/<fingerprint id>/<space>-<backend>-<precision>-b<batch>.json``.

``profiles/<device>/<file>`` names the table of that file measured on this machine's hardware (the one whose
recorded fingerprint is this machine's), else the most recently measured one
(:func:`vitres_deploy.latency.table.resolve_table_path`).
"""
