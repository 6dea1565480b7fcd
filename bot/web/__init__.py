"""The web application: one FastAPI process serving the widget, consoles and platform hooks."""
