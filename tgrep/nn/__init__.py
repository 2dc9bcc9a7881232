"""tgrep.nn."""
