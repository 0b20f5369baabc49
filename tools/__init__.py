"""Command-line programs. They parse arguments and call the library; no logic a
library user would need lives here."""
