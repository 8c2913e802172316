"""The app's screens. Each is thin: it renders views from `tui.services` and runs their calls in workers."""
