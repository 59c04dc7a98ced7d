"""Built-in plugin 'fidelity' (work in progress: registers nothing yet)."""
