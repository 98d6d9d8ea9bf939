"""What the vendor ships to the fleet: signed releases, the one rollout engine (core and plugin
rollouts), the plugin marketplace and restore verifications. No HTTP here."""
