"""smtpmon: an SMTP monitor that records every reply code by stage, class and category."""

__version__ = "0.1.0"
