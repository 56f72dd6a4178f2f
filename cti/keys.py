"""Typed keys of the aiohttp application."""

from __future__ import annotations

from aiohttp import web

from cti.services import Services

SERVICES = web.AppKey("services", Services)
