"""datadebug-tui: the Textual front end over core."""
