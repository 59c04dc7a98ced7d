"""Built-in plugin 'stylegan2_ada' (work in progress: registers nothing yet)."""
