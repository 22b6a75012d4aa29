"""IMAP sync engine: the only code that talks IMAP/SMTP; parsing and threading helpers are pure."""
