"""The metering actor: usage aggregated per organisation, server, tool and day; plans and quotas."""
