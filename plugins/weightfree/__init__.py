"""Built-in plugin 'weightfree' (work in progress: registers nothing yet)."""
