"""Subcommands of the smtpmon command line."""
