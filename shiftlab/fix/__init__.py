"""Fix: convert a trained model to an anti-aliased or polyphase one, and certify the result."""
