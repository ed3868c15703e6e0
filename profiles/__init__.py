"""Measured latency tables shipped with vitres-deploy (``<device>/<space>-<backend>-<precision>-b<batch>.json``)."""
