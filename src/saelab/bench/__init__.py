"""The evaluation panel: many metrics (saelab.eval, saelab.interp) over many SAE folders, one table."""
