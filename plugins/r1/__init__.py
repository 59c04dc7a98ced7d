"""Built-in plugin 'r1' (work in progress: registers nothing yet)."""
