"""What a message is on the wire: header block, encoded words, xtext; used by every stage."""
