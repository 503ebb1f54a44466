"""Pure renderers: partition -> kernel rulesets."""
