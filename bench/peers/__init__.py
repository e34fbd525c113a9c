"""The libraries a user would pick instead of persistkit, each driven the same way."""
