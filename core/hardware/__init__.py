"""Hardware access: the hwdb schema and loader, probing, matching, calibration."""
