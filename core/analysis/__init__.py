"""Analysis of an indexed workspace: predicted shifts, concepts, data clusters, structure, hypotheses and their calibration, names and evidence."""
