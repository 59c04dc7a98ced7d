"""Built-in plugin 'memorization' (work in progress: registers nothing yet)."""
