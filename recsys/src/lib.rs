//! The recommender (filled by the recommender issue).
