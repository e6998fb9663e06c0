"""The auth actor: people (magic-link sign-in, sessions), organisations with members and roles, API keys."""
