"""Tools for development and tests: embedded servers and the webhook simulator.

Never imported by the service at run time (an import contract says so).
"""
