"""netns driver."""
