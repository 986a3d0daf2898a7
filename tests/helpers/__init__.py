"""What the tests share: fixtures stay in tests/conftest.py, everything imported lives here."""
