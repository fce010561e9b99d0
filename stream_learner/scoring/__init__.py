"""A model as data, without torch: its spec, the tensors each kind holds, and its scores in numpy."""
