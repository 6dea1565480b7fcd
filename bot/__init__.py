"""The conversation core and the web application of Snapdesk."""
