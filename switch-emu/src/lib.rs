//! Software switch (work in progress).
