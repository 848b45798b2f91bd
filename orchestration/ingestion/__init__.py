"""Landing files -> raw warehouse tables (checked, quarantined), and the landing sensor."""
