"""Real-server fixtures (Dovecot IMAP, aiosmtpd SMTP, Chromium via Playwright)."""
