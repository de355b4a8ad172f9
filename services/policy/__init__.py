"""The policy service: profiles, tags and rules; endpoint membership; explain."""
