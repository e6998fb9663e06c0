"""The deployer actor: checked builds become running, health-checked servers at stable URLs (see handlers)."""
