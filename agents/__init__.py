"""What happens at each hop: one module per stage, each a pure async handler, plus the
one runtime that turns handlers into agents."""
