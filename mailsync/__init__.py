"""The only code that talks IMAP/SMTP. No Flask request imports here."""
