-- The provider's limits. failures: how many times in a row the provider certainly failed to
-- place this attempt (a 500 "Failed to start PSTN leg" and its kin: its carrier is overrun,
-- nobody was rung); it goes back to the queue each time, and ends after a bounded number.
ALTER TABLE attempts ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
