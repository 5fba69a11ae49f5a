"""Colour maths: Lab and Y' -> L, the network's chroma back onto the frame, temporal stability, day/night, and
a camera's day reference."""
