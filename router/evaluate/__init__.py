"""`router eval`: cascade quality per confidence signal (AUROC, deferral curve, PGR, cost)."""
