"""Built-in plugin 'diffusion' (work in progress: registers nothing yet)."""
