"""Reward kinds, one module each; every module here is imported when the registry is first
read (`mapo.rewards.registry.REWARDS`), so a new kind is a new file with `@register_reward`."""
