"""Landmark Tagger: which of the course's world landmarks a photo shows, and so where it was taken."""
