"""Networks shared by methods; they know nothing of noise levels or losses."""
