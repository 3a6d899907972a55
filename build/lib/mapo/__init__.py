"""MAPO: Mixed Advantage Policy Optimization for vision-language models."""
