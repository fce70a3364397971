"""The secrets people sign in with: password and PIN rules, hashing (argon2id, Flask-era bcrypt), and the
bounded queue that verifies them off the event loop."""
