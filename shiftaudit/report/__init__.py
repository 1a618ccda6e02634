"""Everything that turns results into something people read: terminal tables, JSON, pictures, HTML."""
