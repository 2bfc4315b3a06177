-- Which CalculateTotals message made the stored totals (NULL: a caller
-- outside the chains, such as temctl or a benchmark). A chain whose
-- calculation finds the cycle current compares it with its own message id:
-- the same id is its own calculation retried after the commit, and still
-- owes the backup and the insights; another id means that message's chain
-- owes them, so this chain goes straight to its invoice (issue 17: 6 of 7
-- chains of a day's sync found the cycle current and repeated both).
ALTER TABLE cycle_state ADD COLUMN calculated_by TEXT;
